"""The dashboard (``safehold serve``, ``safehold daemon --dashboard``): read-only pages over
what ops/ computes, a snapshot browser, and two triggers (back up now, drill now).

The top layer: it may import every layer below, cli/ included (the job adapter runs
``safehold schedule run``). Its web libraries (Werkzeug, cheroot, Jinja2) are imported only
here, so no other command pays for them. docs/operations.md "The dashboard".
"""
