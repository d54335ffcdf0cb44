"""The service layer: what the gateway does, with plain (session, deps, ...) functions called alike by the
pipeline steps, the CLI, the importer, the scheduler and the web."""
