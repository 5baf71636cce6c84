import sys

from .envcheck import check

check()  # before the CLI imports anything: a wrong interpreter gets one clear message

from .cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
