"""File I/O: video and audio through ffmpeg."""
