import sys

from coiled_core.node.agent import main

sys.exit(main())
