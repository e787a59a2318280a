"""The OpenAI wire format, written and read in one place (the bottom layer: the gateway and the engines use it).

One module per concern, each with its contract on top:

* :mod:`models.wire.sse`: server-sent events: encoding (``encode_event``, ``DONE``), re-cutting a relayed byte
  stream on event boundaries (``EventAligner``, ``contains_done``, ``insert_before_done``) and the one
  decoder (``EventDecoder``, ``iter_events``);
* :mod:`models.wire.chunks`: the one writer of streamed ``chat.completion.chunk`` / ``text_completion``
  events (``ChunkWriter``);
* :mod:`models.wire.read`: reading answers: a choice's text, the ``usage`` counts, whole bodies and streams
  as ``Completion``/``Delta`` objects, a server's error message;
* :mod:`models.wire.errors`: the one table between engine exceptions and HTTP answers (status, OpenAI error
  ``type``/``code``, metrics reason), both ways;
* :mod:`models.wire.schemas`: the request models (``ChatCompletionRequest``, ``CompletionRequest``, ...), the
  model list, and engine chat turns written as a request's ``messages``.

Only ``models.engine`` and ``core`` are imported from this house; never ``gateway`` or ``train``.
"""
