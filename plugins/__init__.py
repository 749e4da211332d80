"""Built-in family plugins. Each module is an entry point of the ``archcomposer.plugins`` group
(see pyproject.toml), registered exactly as a third-party plugin would be."""
