//! Sans-IO RFC 6455 codec: this module never touches a file descriptor.
