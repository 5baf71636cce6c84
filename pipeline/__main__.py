import sys

from .runtime import pin_threads

pin_threads()  # before numpy or torch loads: a stage's threads never depend on what its parent exported

from .envcheck import check  # noqa: E402

check()  # before the CLI imports anything: a wrong interpreter gets one clear message

from .cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
