"""The pages under ``/ui``: a playground, the experiment report and the traces, served by the gateway itself."""
