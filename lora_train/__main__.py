"""`python -m lora_train ...`"""

import sys

from lora_train.cli import main

sys.exit(main())
