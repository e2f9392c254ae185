"""The pure core: no IO library imports."""
