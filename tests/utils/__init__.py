"""Shared test helpers: real servers started on free ports, the platform harness, test job kinds."""
