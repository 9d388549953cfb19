"""The operator console: sign-in (an app's appid + secret, or the server admin token), server-side
sessions in the store's documents, the cookie authorization of the REST API, and the console's pages
(``static/``, shipped inside the package). May import what ``api`` may.
"""
