"""Private internals of the libraries handserve uses, each library's behind one module: an
upgrade that moves one breaks here, once, with a test naming the library and its version."""
