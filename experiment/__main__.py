import sys

from experiment.run import main

sys.exit(main())
