"""The call metadata a debate sets when it will continue a conversation.

It lives apart from :mod:`mafl_graph.models` and :mod:`mafl_graph.local` so that both can read
it without importing each other.
"""

CONTINUED_KEY = "continued"
"""Call metadata: True when the caller will send the conversation again with this reply and
more turns appended (a debate agent's next round). The local model then keeps the reply's keys
and values so the next prompt skips them; for hosted models it is only a trace attribute."""
