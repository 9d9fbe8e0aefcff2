"""Tools the tests run (helm), built from the Go module proxy and cached by version."""
