"""Entry point of `python -m panet_lite`."""
import sys

from .cli import main

sys.exit(main())
