"""jobtrace's private house: nothing here is public API; import from :mod:`jobtrace`."""
