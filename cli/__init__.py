"""The ``torch-rln`` command: reruns the published experiments with torch-rln's wrappers.

Installed as the package ``torch_rln_cli``; it needs the ``bench`` extra
(``pip install 'torch-rln[bench]'``).
"""
