"""The ``pscluster`` command: the top floor, which starts the services but is none of them."""
