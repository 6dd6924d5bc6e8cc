import sys

from musicsteer.cli import main

sys.exit(main())
