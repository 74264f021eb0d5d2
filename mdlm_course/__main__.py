"""python -m mdlm_course ...  (see mdlm_course/cli.py)"""
from .cli import main

raise SystemExit(main())
