from sklearn.datasets import load_breast_cancer

from __PKG__.core import make_model


def test_model_learns_the_training_data():
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    model = make_model(n_estimators=10).fit(X, y)
    assert (model.predict(X) == y).mean() > 0.9
