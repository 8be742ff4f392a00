"""The application layer: the `chaosgrad` command, the paper's figures, `compare` and
meta-train's command. The only place that imports the library, systems and estimators together.
"""
