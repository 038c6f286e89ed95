"""Generated code for the ``attribution`` protobuf packages."""
