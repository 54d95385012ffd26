"""The annotation server and browser tool (``segany serve``); needs the ``serve`` extra."""
