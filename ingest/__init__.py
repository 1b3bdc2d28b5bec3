"""The pseudonymization ingest: raw hospital tables in, a versioned, checksummed, pseudonymized dataset out.

Entry points (imported from their modules, so that importing ``ingest`` stays cheap for hash workers):

- ``ingest.pipeline.ingest_dataset(paths, spec, source_dir, project, audit=..., actor=...)``
- ``ingest.demo.publish_demo(paths)``: synthetic OMOP for demo-cardio and demo-oncology
- ``ingest.synth.synthesize(out_dir, persons)``: raw synthetic OMOP with planted identifiers
- ``ingest.publish.verify(version_dir)``: re-check a published version against its manifest
- ``ingest.cli.register``: ``enclave dataset ingest|verify|report|synth``

See docs/DATA.md.
"""
