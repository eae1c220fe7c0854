import sys

from gfmkit.cli import main

sys.exit(main())
