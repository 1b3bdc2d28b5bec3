from hub.gate import allowed


def test_only_the_notebook_servers_routes_are_allowed():
    assert allowed("GET", "/hub/api/user") and allowed("GET", "/hub/api/") and allowed("GET", "/hub/api")
    assert allowed("POST", "/hub/api/users/alice/activity") and allowed("POST", "/hub/api/oauth2/token")
    for method, path in [("POST", "/hub/login"), ("POST", "/hub/api/users/alice/tokens"), ("GET", "/hub/api/users"),
                         ("POST", "/hub/api/users/alice/servers/x"), ("GET", "/hub/api/user/../users"),
                         ("DELETE", "/hub/api/users/alice/activity"), ("GET", "/hub/home"),
                         ("POST", "/hub/api/users/alice/activity/x")]:
        assert not allowed(method, path), (method, path)
