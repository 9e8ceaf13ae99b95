import sys

from dualhrq.cli import main

sys.exit(main())
