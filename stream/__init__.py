"""The Faust application and all I/O: Kafka, Redis, HTTP, command line."""
