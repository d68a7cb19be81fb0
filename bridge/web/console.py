def mount_console(app, settings, records):  # placeholder, replaced below
    return False
