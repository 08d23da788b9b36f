"""The batch store schema as numbered SQL files (a package so that wheels ship them)."""
