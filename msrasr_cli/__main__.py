import sys

from msrasr_cli.main import main

sys.exit(main())
