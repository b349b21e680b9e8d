//! Ingest (skeleton): watch the export folder and turn files into ordered volumes.
