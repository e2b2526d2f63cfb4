//! OTLP push: converts registry snapshots into `ExportMetricsServiceRequest`s and sends them
//! to a collector over gRPC or HTTP/protobuf through a retry state machine.
