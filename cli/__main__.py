"""``python -m torch_rln_cli``: the same as the ``torch-rln`` command."""

from .main import main

raise SystemExit(main())
