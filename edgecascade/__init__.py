"""edgecascade: edge-cloud cascade inference.

Applications need one line:

    from edgecascade import Client          # or AsyncClient
"""
