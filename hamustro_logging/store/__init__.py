"""The store: the parts of :class:`hamustro_logging.queue.Queue`, one job to a module.

Start at :mod:`hamustro_logging.queue` (which part does what, who calls
what), :mod:`~hamustro_logging.store.keys` (every row, and its owner) and
:mod:`~hamustro_logging.store.db` (the connection and its locks). Each
module opens with its job and the threads that call it.
"""
