"""The web view: the server's jobs, GPUs, curves and usage in a browser, live.

``service`` runs HTTP servers (TCP loopback and a Unix socket beside the control socket) in
threads of their own; every page reads and acts through the control socket's command path
(``ControlServer.answer``), so a web user may do exactly what the same user may do with
``yolo-supervisorctl``. ``auth`` holds the login tokens and sessions; ``pages`` turns command
results into what the pages draw; ``static/`` is the browser side (uPlot vendored: servers are
offline).
"""
