import sys

from ignite_rn50.run import main

sys.exit(main())
