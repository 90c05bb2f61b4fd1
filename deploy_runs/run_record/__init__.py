"""A run's record in Prefect, one concept in four modules: `facts` (where each fact is kept and
how it is encoded, pure), `writer` (what the flow writes about its run as it goes), `ending`
(how the flow ends its run: the failure explained, the summary artifact), `reader` (a flow run
and its task runs read back as a `Run`; when a run is recorded for good), and `summary` (a Run
as the Markdown artifact, pure)."""
