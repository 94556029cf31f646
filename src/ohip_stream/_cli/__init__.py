"""The ``ohip-stream`` command line, one module per command group (imported only when the
``cli`` extra is installed; the entry point is :mod:`ohip_stream.cli`)."""
