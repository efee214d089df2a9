"""CTF values against hand-computed RELION values and the wavelength constants."""

import numpy as np
import pytest

from cryonb.ctf import CTFParams, electron_wavelength_A, evaluate_ctf


def test_wavelengths_match_relion_constants():
    # RELION: 12.2643247 / sqrt(V (1 + 0.978466e-6 V)); values from CONVENTIONS.md §6.1
    np.testing.assert_allclose(electron_wavelength_A([100, 200, 300]),
                               [0.0370146, 0.0250795, 0.0196876], atol=5e-8)


def _params(**kw):
    base = dict(defocus_u_A=20000.0, defocus_v_A=15000.0, defocus_angle_deg=30.0,
                voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=0.1)
    base.update(kw)
    return CTFParams(**base)


def test_ctf_against_hand_computed_values():
    # Hand computation at k = (0.05, 0.02) 1/Å: theta = atan2(0.02, 0.05); dfz = 17500 +
    # 2500 cos(2 (theta - 30 deg));
    # gamma = -pi lam dfz k^2 + pi/2 Cs lam^3 k^4 - atan(Q / sqrt(1 - Q^2));
    # CTF = -sin(gamma) = -0.5011628501 (and with phi = 90 deg, B = 100, scale 0.9: -0.7243516575)
    kx, ky = np.array([0.05]), np.array([0.02])
    np.testing.assert_allclose(evaluate_ctf(_params(), kx, ky)[0, 0], -0.5011628501062113,
                               rtol=1e-9)
    p = _params(phase_shift_deg=90.0, bfactor_A2=100.0, scale=0.9)
    np.testing.assert_allclose(evaluate_ctf(p, kx, ky)[0, 0], -0.7243516574718156, rtol=1e-9)


def test_ctf_at_zero_frequency_is_plus_amplitude_contrast():
    p = _params(amplitude_contrast=np.array([0.07, 0.1]))
    np.testing.assert_allclose(evaluate_ctf(p, np.zeros(1), np.zeros(1))[:, 0], [0.07, 0.1])
    ctffind = evaluate_ctf(p, np.zeros(1), np.zeros(1), convention="ctffind")
    np.testing.assert_allclose(ctffind[:, 0], [-0.07, -0.1])


def test_astigmatism_angle_is_measured_from_x_towards_y():
    """Along the U axis (angle theta_ast) the defocus is U; along the V axis it is V."""
    p_u = _params(defocus_u_A=20000.0, defocus_v_A=20000.0)
    p_v = _params(defocus_u_A=15000.0, defocus_v_A=15000.0)
    astig = _params(defocus_angle_deg=30.0)
    k = 0.04
    along_u = (np.array([k * np.cos(np.deg2rad(30))]), np.array([k * np.sin(np.deg2rad(30))]))
    along_v = (np.array([k * np.cos(np.deg2rad(120))]), np.array([k * np.sin(np.deg2rad(120))]))
    np.testing.assert_allclose(evaluate_ctf(astig, *along_u), evaluate_ctf(p_u, *along_u))
    np.testing.assert_allclose(evaluate_ctf(astig, *along_v), evaluate_ctf(p_v, *along_v))


def test_zeros_of_an_isotropic_ctf():
    """With Cs = 0 and Q = 0 the zeros sit at pi lam df k^2 = n pi."""
    p = CTFParams(10000.0, 10000.0, 0.0, 300.0, 0.0, 0.0)
    lam = electron_wavelength_A(300.0)
    k_zero = np.sqrt(np.arange(1, 5) / (lam * 10000.0))
    np.testing.assert_allclose(evaluate_ctf(p, k_zero, np.zeros(4))[0], 0.0, atol=1e-12)


def test_ctf_params_validation_and_subset():
    p = _params(defocus_u_A=[1e4, 2e4, 3e4])
    assert len(p) == 3 and p.voltage_kV.shape == (3,)
    assert p.subset([2]).defocus_u_A.tolist() == [3e4]
    assert CTFParams.concatenate([p, p.subset([0])]) == _params(defocus_u_A=[1e4, 2e4, 3e4, 1e4])
    with pytest.raises(ValueError, match="NaN"):
        _params(defocus_u_A=[np.nan])
    with pytest.raises(ValueError, match="length"):
        _params(defocus_u_A=[1.0, 2.0], defocus_v_A=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="amplitude_contrast"):
        _params(amplitude_contrast=1.5)
