"""Ingestion: load files into documents, chunk them, embed and write them to a store."""
