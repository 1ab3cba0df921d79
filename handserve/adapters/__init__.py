"""One module per library whose private internals the project uses: upgrades break here, once."""
