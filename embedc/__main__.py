"""``python -m embedc``: the same CLI as the ``embedc`` command."""
from .cli import main

main()
