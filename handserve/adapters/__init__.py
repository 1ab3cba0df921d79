"""Private internals of the libraries handserve uses, each library's behind one module."""
