import sys

from opencir.cli import main

sys.exit(main())
