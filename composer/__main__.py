import sys

from archcomposer.cli import main

sys.exit(main())
