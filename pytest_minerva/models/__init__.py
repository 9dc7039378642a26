"""Models: the catalog, resolving a name to files here, fetching from a hub, tiny random models."""
