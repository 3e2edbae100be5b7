"""Built-in adapters, one module per client library; each is imported only when an object of
its library is registered (see ``postfork._adapters._BUILTIN``)."""
