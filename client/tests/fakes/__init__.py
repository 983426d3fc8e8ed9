"""The test suite's own stand-ins: stub Spaces, a fault-injecting proxy, a Hub runtime API."""
