from django.urls import path
from throttle_identity import throttle_identity  # conf.examples/django/throttle_identity.py

from . import views

urlpatterns = [
    # verified identity for nginx (throttle_identity_resolve): 200 + X-User-Id, or 401
    path("_identity/", throttle_identity),
    path("api/auth/login/", views.LoginView.as_view()),
    path("api/auth/logout/", views.LogoutView.as_view()),
]

# /api/...: DRF's throttles on; /plain/...: the same views without throttles.
for prefix, plain in (("api/", False), ("plain/", True)):
    off = {"throttle_classes": []} if plain else {}
    urlpatterns += [
        path(prefix + "items/", views.ItemsView.as_view(**off)),
        path(prefix + "login-scope/", views.LoginScopeView.as_view(**off)),
        path(prefix + "review/today/", views.ReviewTodayView.as_view(**off)),
        path(prefix + "review/", views.ReviewWriteView.as_view(**off)),
    ]
urlpatterns += [
    path("plain/auth/login/", views.LoginView.as_view()),
    path("plain/auth/logout/", views.LogoutView.as_view()),
]
